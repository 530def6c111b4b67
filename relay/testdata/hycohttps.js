// Drives Microsoft's hyco-https (1.4.5, on ws 6) as an HTTP-mode listener,
// for relay/hyco_interop_test.go and integration/.
// usage: node hycohttps.js LISTEN-URI TOKEN
// Every request is answered 201 "Made By Node" with JSON describing what
// arrived, except: a path ending in /big is answered with X-Want-Bytes
// bytes (default 1 MiB: over 64 KiB, so over a rendezvous), and one ending
// in /never is not answered at all.
'use strict';
const https = require('hyco-https');
const crypto = require('crypto');
const [uri, token] = process.argv.slice(2);
const server = https.createRelayedServer({ server: uri, token: token }, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(Buffer.from(c)));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const path = req.url.split('?')[0];
    if (path.endsWith('/never')) {
      return;
    }
    if (path.endsWith('/big')) {
      res.setHeader('Content-Type', 'application/octet-stream');
      res.end(Buffer.alloc(Number(req.headers['x-want-bytes'] || 1048576), 'z'));
      return;
    }
    const info = { method: req.method, url: req.url, headers: req.headers, bodyLen: body.length,
      bodySha: crypto.createHash('sha256').update(body).digest('hex') };
    res.setHeader('Content-Type', 'application/json');
    res.setHeader('X-Listener', 'hyco-https');
    res.writeHead(201, 'Made By Node');
    res.end(JSON.stringify(info));
  });
});
server.on('listening', () => console.log('LISTENING'));
server.on('error', (e) => console.log('ERROR ' + e));
server.listen();
