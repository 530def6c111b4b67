// Drives Microsoft's hyco-ws package against a relay (TestHycoWSInterop).
// usage: node hyco.js listen <listen-uri> <token> | send <connect-uri> <token>
'use strict';
const WS = require('hyco-ws');
const [mode, uri, token] = process.argv.slice(2);
if (mode === 'listen') {
  const srv = WS.createRelayedServer({ server: uri, token: token }, (ws) => {
    ws.on('message', (m) => ws.send(m));
  });
  srv.on('listening', () => console.log('LISTENING'));
  srv.on('error', (e) => console.log('ERROR ' + e));
} else {
  const msgs = ['hello', 'x'.repeat(100000), 'bye'];
  const want = msgs.join('');
  const ws = WS.relayedConnect(uri, token, (c) => {
    let got = '';
    c.on('message', (m) => {
      got += m.toString();
      if (got.length >= want.length) {
        console.log(got === want ? 'ECHO OK' : 'ECHO BAD');
        process.exit(got === want ? 0 : 1);
      }
    });
    msgs.forEach((m) => c.send(Buffer.from(m)));
  });
  ws.on('error', (e) => { console.log('ERROR ' + e); process.exit(2); });
}
