#!/usr/bin/env node
// A Node `tls` client for tests/unclean_end.rs: connects, sends REQUEST, and prints one JSON
// line saying how the stream ended. Node reads a TCP reset right behind data as a clean 'end'
// (libuv turns the hang-up into EOF), so what matters is which event came: 'end' (a clean
// end as Node's API tells it) or 'error' (with its code, e.g. ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR).
//
// usage: node_client.js HOST PORT CA_FILE REQUEST (an empty REQUEST sends nothing)
'use strict';
const fs = require('fs');
const tls = require('tls');

const [host, port, caFile, request] = process.argv.slice(2);
let data = '';
let result = null;

function report(event, code, message) {
  if (result) return;
  result = { event, code: code || '', message: message || '', data };
}

const socket = tls.connect({ host, port: Number(port), ca: fs.readFileSync(caFile), servername: 'localhost' });
socket.setEncoding('utf8');
socket.on('secureConnect', () => { if (request) socket.write(request); });
socket.on('data', (chunk) => { data += chunk; });
socket.on('end', () => report('end'));
socket.on('error', (err) => report('error', err.code, err.message));
socket.on('close', () => {
  report('close');
  process.stdout.write(JSON.stringify(result) + '\n');
});
setTimeout(() => {
  report('timeout');
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(1);
}, 15000).unref();
