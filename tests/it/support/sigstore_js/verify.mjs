// Checks a key-based sigstore bundle (a DSSE envelope signed by a known
// public key, no certificate, no log entry) with @sigstore/verify.
//
// node verify.mjs BUNDLE.json KEY.pem
// Exits 0 when the real verifier accepts it, 1 (with its reason) when not.

import fs from 'node:fs';

import { verifyBundle } from './check.mjs';

const [bundlePath, keyPath] = process.argv.slice(2);
if (!bundlePath || !keyPath) {
  console.error('usage: verify.mjs BUNDLE.json KEY.pem');
  process.exit(2);
}
const root = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};
try {
  verifyBundle(JSON.parse(fs.readFileSync(bundlePath, 'utf8')), root, {
    key: fs.readFileSync(keyPath, 'utf8'),
    tlogThreshold: 0,
    timestampThreshold: 0,
  });
} catch (e) {
  console.error(`rejected: ${e.code ?? ''} ${e.message}`);
  process.exit(1);
}
console.log('verified');
