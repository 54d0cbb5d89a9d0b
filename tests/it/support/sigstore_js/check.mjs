// The one call into @sigstore/verify, shared by sign.mjs and verify.mjs:
// throws unless the bundle (sigstore bundle JSON) verifies against the
// trusted root (trusted_root.json) or, with `key` (PEM), under that public
// key whatever hint the bundle names.

import crypto from 'node:crypto';

import { bundleFromJSON } from '@sigstore/bundle';
import { TrustedRoot } from '@sigstore/protobuf-specs';
import { Verifier, toSignedEntity, toTrustMaterial } from '@sigstore/verify';

export function verifyBundle(bundleJSON, rootJSON, opts = {}) {
  const keys = opts.key
    ? () => ({ publicKey: crypto.createPublicKey(opts.key), validFor: () => true })
    : undefined;
  const trust = toTrustMaterial(TrustedRoot.fromJSON(rootJSON), keys);
  const verifier = new Verifier(trust, {
    tlogThreshold: opts.tlogThreshold ?? 1,
    ctlogThreshold: opts.ctlogThreshold ?? (keys ? 0 : 1),
    timestampThreshold: opts.timestampThreshold ?? 1,
  });
  return verifier.verify(toSignedEntity(bundleFromJSON(bundleJSON)), opts.policy);
}
