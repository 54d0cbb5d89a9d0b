// Attaches a sigstore bundle to an image as an OCI 1.1 referrer with
// sigstore-js's own registry client (@sigstore/oci, as `npm publish
// --provenance` tooling does), anonymously; it speaks plain HTTP to
// 127.0.0.1 and localhost only. Prints the referrer's descriptor (JSON).
// (@sigstore/oci 0.6.0 requires `promise-retry` without declaring it: the
// package.json here names it.)
//
// node attach.mjs HOST:PORT/REPO sha256:HEX BUNDLE.json

import fs from 'node:fs';

import { attachArtifactToImage } from '@sigstore/oci';

const [imageName, imageDigest, bundlePath] = process.argv.slice(2);
if (!imageName || !imageDigest || !bundlePath) {
  console.error('usage: attach.mjs HOST:PORT/REPO sha256:HEX BUNDLE.json');
  process.exit(2);
}
const descriptor = await attachArtifactToImage({
  imageName,
  imageDigest,
  artifact: fs.readFileSync(bundlePath),
  mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
  credentials: undefined,
});
console.log(JSON.stringify(descriptor));
