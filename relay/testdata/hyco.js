// Drives Microsoft's hyco-ws (1.0.5, on ws 1.1.5) against a relay, for
// relay/hyco_interop_test.go. One line of output per event.
// usage: node hyco.js MODE URI TOKEN [ARG]
//   listen     a hyco-ws listener echoing every message with its type; a
//              text message "close-me:CODE:REASON" makes it close so
//   send       sends text "hello", binary 100000 B, text "bye"; expects them
//              echoed as three messages of the same types
//   send-bytes the same, but only the bytes must come back (a TCP echo)
//   close      asks the listener to close with ARG ("CODE:REASON")
//   protocols  offers the subprotocols in ARG (comma-separated)
//   status     a bare handshake with Node's own http client
'use strict';
const WS = require('hyco-ws');
const [mode, uri, token, arg] = process.argv.slice(2);
const out = (s) => console.log(s);
const kind = (m, flags) => ((flags && flags.binary) ? 'binary ' : 'text ') + m.length;
const msgs = [['text', 'hello'], ['binary', Buffer.alloc(100000, 7)], ['text', 'bye']];

switch (mode) {
case 'listen': {
  const srv = WS.createRelayedServer({ server: uri, token: token }, (ws) => {
    ws.on('open', () => out('CONNECTION ' + (ws.protocol || '-')));
    ws.on('message', (m, flags) => {
      const binary = !!(flags && flags.binary);
      const s = binary ? '' : m.toString();
      if (s.startsWith('close-me:')) {
        const [, code, reason] = s.split(':');
        ws.close(Number(code), reason);
        return;
      }
      ws.send(m, { binary: binary });
    });
    ws.on('close', (code, reason) => out('STREAM CLOSE ' + code + ' ' + (reason || '')));
    ws.on('error', () => {});
  });
  srv.on('listening', () => {
    out('LISTENING');
    srv.controlChannel.on('close', (code, reason) => out('CONTROL CLOSE ' + code + ' ' + (reason || '')));
  });
  srv.on('error', (e) => out('ERROR ' + e));
  break;
}
case 'send':
case 'send-bytes': {
  const want = msgs.map(([t, d]) => t + ' ' + d.length).join(', ');
  const wantBytes = msgs.map(([, d]) => d.length).reduce((a, b) => a + b);
  const got = [];
  let bytes = 0;
  const ws = WS.relayedConnect(uri, token, (c) => {
    c.on('message', (m, flags) => {
      got.push(kind(m, flags));
      bytes += m.length;
      if (mode === 'send' && got.length === msgs.length) {
        out(got.join(', ') === want ? 'ECHO OK' : 'ECHO BAD ' + got.join(', '));
        process.exit(got.join(', ') === want ? 0 : 1);
      }
      if (mode === 'send-bytes' && bytes >= wantBytes) {
        out(bytes === wantBytes ? 'ECHO OK' : 'ECHO BAD ' + bytes);
        process.exit(bytes === wantBytes ? 0 : 1);
      }
    });
    msgs.forEach(([t, d]) => c.send(d, { binary: t === 'binary' }));
  });
  ws.on('error', (e) => { out('ERROR ' + e); process.exit(2); });
  break;
}
case 'close': {
  const ws = WS.relayedConnect(uri, token, (c) => c.send('close-me:' + arg));
  ws.on('close', (code, reason) => { out('CLOSE ' + code + ' ' + (reason || '')); process.exit(0); });
  ws.on('error', (e) => { out('ERROR ' + e); process.exit(2); });
  break;
}
case 'protocols': {
  const ws = new WS(uri, arg.split(','), { headers: { ServiceBusAuthorization: token } });
  ws.on('open', () => { out('PROTOCOL ' + ws.protocol); process.exit(0); });
  ws.on('error', (e) => { out('ERROR ' + e); process.exit(2); });
  break;
}
case 'status': {
  const http = require('http');
  const u = require('url').parse(uri);
  const req = http.get({ host: u.hostname, port: u.port, path: u.path, headers: {
    Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', ServiceBusAuthorization: token } });
  req.on('response', (res) => { out('STATUS ' + res.statusCode + ' ' + res.statusMessage); process.exit(0); });
  req.on('upgrade', (res, sock) => { out('STATUS 101'); sock.destroy(); process.exit(0); });
  req.on('error', (e) => { out('ERROR ' + e); process.exit(2); });
  break;
}
default:
  out('ERROR unknown mode ' + mode);
  process.exit(2);
}
