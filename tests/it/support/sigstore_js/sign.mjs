// Signs an image the way cosign v3 does (a DSSE envelope over an in-toto
// statement of predicate type https://sigstore.dev/cosign/sign/v1 whose
// subject is the image digest) with sigstore-js's own signer, against
// in-process stand-ins for Fulcio, Rekor and a timestamp authority
// (@sigstore/mock behind nock: no socket is opened). Writes bundle.json
// (sigstore bundle v0.3) and trusted_root.json (the stand-ins' CA, CT log,
// transparency log and TSA), then checks the bundle with @sigstore/verify
// against that root and exits 0 only when the real verifier accepts it.
//
// node sign.mjs OUT_DIR DIGEST NAME [--tlog dsse|intoto|none] [--tsa]
//                                   [--identity URI] [--issuer URL]

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import nock from 'nock';
import {
  fulcioHandler,
  initializeCA,
  initializeCTLog,
  initializeTLog,
  initializeTSA,
  rekorHandler,
  tsaHandler,
} from '@sigstore/mock';
import { DSSEBundleBuilder, FulcioSigner, RekorWitness, TSAWitness } from '@sigstore/sign';
import { bundleToJSON } from '@sigstore/bundle';

import { verifyBundle } from './check.mjs';

const FULCIO = 'https://fulcio.test';
const REKOR = 'https://rekor.test';
const TSA = 'https://tsa.test';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    tlog: { type: 'string', default: 'dsse' },
    tsa: { type: 'boolean', default: false },
    identity: { type: 'string', default: 'https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main' },
    issuer: { type: 'string', default: 'https://token.actions.githubusercontent.com' },
  },
});
const [out, digest, name] = positionals;
// Keyless needs a verifiable signing time: a log entry, a timestamp, or both.
const timed = opts.tlog !== 'none' || opts.tsa;
if (!out || !/^sha256:[0-9a-f]{64}$/.test(digest ?? '') || !name || !['dsse', 'intoto', 'none'].includes(opts.tlog) || !timed) {
  console.error('usage: sign.mjs OUT_DIR sha256:HEX NAME [--tlog dsse|intoto|none] [--tsa] (not none without --tsa) [--identity URI] [--issuer URL]');
  process.exit(2);
}

// One clock for every stand-in, so the certificate (valid ten minutes from
// it), the log's integrated time and the TSA's genTime agree; two seconds
// ahead, whole seconds, because the stand-ins' root certificates are valid
// from the real time they are made (to the second) and must be at signing.
const clock = new Date((Math.floor(Date.now() / 1000) + 2) * 1000);
const since = new Date(clock.getTime() - 86_400_000);
const p256 = () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });

const ctlog = await initializeCTLog(p256(), clock);
const ca = await initializeCA(p256(), ctlog, clock);
const tlog = await initializeTLog(REKOR, p256(), clock);
const tsa = await initializeTSA(p256(), clock);

// The stand-ins answer in-process; nothing leaves the process.
nock.disableNetConnect();
const serve = (base, handler) =>
  nock(base)
    .persist()
    .post(handler.path)
    .reply(async (_uri, body) => {
      const req = typeof body === 'string' ? body : JSON.stringify(body);
      const r = await handler.fn(req);
      return [r.statusCode, r.response, { 'Content-Type': r.contentType ?? 'text/plain' }];
    });
serve(FULCIO, fulcioHandler(ca));
serve(REKOR, recording(rekorHandler(tlog)));
serve(TSA, tsaHandler(tsa));

// The mock log records the entry as proposed; real Rekor records a
// canonical form instead (rekor pkg/types/dsse/v0.0.1 and intoto/v0.0.2):
// for `dsse`, the envelope's and payload's hashes and each signature with
// its verifier, never the envelope; for `intoto`, the envelope without its
// payload. The stand-in is put in line so the log body is what Rekor would
// sign (and what @sigstore/verify compares with the bundle).
function recording(handler) {
  const sha256 = (b) => ({ algorithm: 'sha256', value: crypto.createHash('sha256').update(b).digest('hex') });
  const canonical = (e) => {
    if (e.kind === 'dsse') {
      const { envelope, verifiers } = e.spec.proposedContent;
      const env = JSON.parse(envelope);
      const signatures = env.signatures
        .map((s) => ({ signature: s.sig, verifier: verifiers[0] }))
        .sort((a, b) => (a.signature < b.signature ? -1 : 1));
      const payloadHash = sha256(Buffer.from(env.payload, 'base64'));
      return { ...e, spec: { envelopeHash: sha256(envelope), payloadHash, signatures } };
    }
    if (e.kind === 'intoto') {
      const { payload: _dropped, ...envelope } = e.spec.content.envelope;
      return { ...e, spec: { content: { ...e.spec.content, envelope } } };
    }
    return e;
  };
  return { path: handler.path, fn: (body) => handler.fn(JSON.stringify(canonical(JSON.parse(body)))) };
}

// An unsigned OIDC token: the stand-in Fulcio reads its claims, checks no
// signature; `sub` becomes the certificate's URI SubjectAltName, `iss` the
// issuer extensions.
const b64url = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const token = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({
  iss: opts.issuer,
  sub: opts.identity,
  aud: 'sigstore',
  iat: Math.floor(clock.getTime() / 1000),
})}.`;

const witnesses = [];
if (opts.tlog !== 'none') {
  witnesses.push(new RekorWitness({ rekorBaseURL: REKOR, entryType: opts.tlog, retry: 0 }));
}
if (opts.tsa) {
  witnesses.push(new TSAWitness({ tsaBaseURL: TSA, retry: 0 }));
}
const builder = new DSSEBundleBuilder({
  signer: new FulcioSigner({
    fulcioBaseURL: FULCIO,
    identityProvider: { getToken: async () => token },
    retry: 0,
  }),
  witnesses,
});

const statement = {
  _type: 'https://in-toto.io/Statement/v1',
  subject: [{ name, digest: { sha256: digest.slice('sha256:'.length) } }],
  predicateType: 'https://sigstore.dev/cosign/sign/v1',
  predicate: {},
};
const bundle = bundleToJSON(
  await builder.create({
    data: Buffer.from(JSON.stringify(statement)),
    type: 'application/vnd.in-toto+json',
  }),
);

const raw = (der) => ({ rawBytes: Buffer.from(der).toString('base64') });
const log = (baseUrl, publicKey, keyId) => ({
  baseUrl,
  hashAlgorithm: 'SHA2_256',
  publicKey: { ...raw(publicKey), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start: since.toISOString() } },
  logId: { keyId: Buffer.from(keyId).toString('base64') },
});
const root = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [log(REKOR, tlog.publicKey, crypto.createHash('sha256').update(tlog.publicKey).digest())],
  certificateAuthorities: [
    {
      subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
      uri: FULCIO,
      certChain: { certificates: [raw(ca.rootCertificate)] },
      validFor: { start: since.toISOString() },
    },
  ],
  ctlogs: [log('https://ctfe.test', ctlog.publicKey, ctlog.logID)],
  timestampAuthorities: [
    {
      subject: { organization: 'sigstore.mock', commonName: 'tsa' },
      uri: TSA,
      certChain: { certificates: [raw(tsa.intCertificate), raw(tsa.rootCertificate)] },
      validFor: { start: since.toISOString() },
    },
  ],
};

fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'bundle.json'), JSON.stringify(bundle));
fs.writeFileSync(path.join(out, 'trusted_root.json'), JSON.stringify(root, null, 2));

// Known-good by the real verifier, or no fixture.
verifyBundle(bundle, root, {
  tlogThreshold: opts.tlog === 'none' ? 0 : 1,
  timestampThreshold: 1,
  policy: { subjectAlternativeName: opts.identity, extensions: { issuer: opts.issuer } },
});
