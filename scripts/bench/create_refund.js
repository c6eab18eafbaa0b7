// CreateRefund load for scripts/bench.sh (k6, k6/net/grpc). Every request is different: a payment
// from PAYMENTS (one id per line, taken in turn across all VUs) and a fresh idempotency key.
//
// Environment:
//   ADDR      host:port of the service's gRPC port
//   KEY       API key (refunds:write)
//   PROTO     the repository's proto/ directory
//   PAYMENTS  file of payment ids, one a line
//   AMOUNT    minor units per refund (USD)
//   MODE      closed: VUS callers back to back for DURATION (the most the service sustains);
//             open: RATE requests/s for DURATION whatever the latency (latency at a given load);
//             shared: ITERATIONS requests in all, shared by VUS callers (the over-refund race)
//   VUS, DURATION, RATE, ITERATIONS
//   SUMMARY   where to write the figures (JSON)
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { Counter, Rate } from 'k6/metrics';
import { SharedArray } from 'k6/data';

const payments = new SharedArray('payments', () =>
  open(__ENV.PAYMENTS).split('\n').filter((l) => l.length > 0));
const amount = parseInt(__ENV.AMOUNT || '100', 10);
const vus = parseInt(__ENV.VUS || '32', 10);
const duration = __ENV.DURATION || '10s';
const run = `${Date.now().toString(36)}`;

const ok = new Counter('refund_ok');
const overRefund = new Counter('refund_over_refund');
const otherError = new Counter('refund_other_error');
const errors = new Rate('refund_errors');

function scenario() {
  switch (__ENV.MODE || 'closed') {
    case 'open': {
      const rate = Math.max(1, Math.round(parseFloat(__ENV.RATE)));
      return {
        executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration,
        preAllocatedVUs: Math.min(256, Math.max(16, Math.ceil(rate / 20))), maxVUs: 512,
      };
    }
    case 'shared':
      return {
        executor: 'shared-iterations', vus, iterations: parseInt(__ENV.ITERATIONS, 10),
        maxDuration: '120s',
      };
    default:
      return { executor: 'constant-vus', vus, duration };
  }
}

export const options = {
  scenarios: { load: scenario() },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  // The figures go to SUMMARY; nothing is judged here.
  discardResponseBodies: false,
};

const client = new grpc.Client();
client.load([__ENV.PROTO], 'refunds/v1/refund_service.proto');
let connected = false;
let logged = 0;

export default function () {
  const i = exec.scenario.iterationInTest;
  let res;
  try {
    if (!connected) {
      client.connect(__ENV.ADDR, { plaintext: true, reflect: false, timeout: '10s' });
      connected = true;
    }
    res = call(i);
  } catch (e) {
    // A transport error (no connection): counted, not thrown, so that it shows as an error.
    if (logged++ < 3) console.error(`CreateRefund: ${e}`);
    res = null;
  }
  record(res);
}

function call(i) {
  return client.invoke('refunds.v1.RefundService/CreateRefund', {
    payment_id: payments[i % payments.length],
    amount: amount,
    currency: 'USD',
    idempotency_key: `bench-${run}-${i}`,
  }, { metadata: { authorization: `Bearer ${__ENV.KEY}` }, timeout: '30s' });
}

function record(res) {
  if (res && res.status === grpc.StatusOK) {
    ok.add(1);
    errors.add(false);
  } else {
    errors.add(true);
    // FAILED_PRECONDITION here is the payment's balance running out (OVER_REFUND or
    // ALREADY_REFUNDED): what the race wants to see, an error anywhere else.
    if (res && res.status === grpc.StatusFailedPrecondition) {
      overRefund.add(1);
    } else {
      otherError.add(1);
      if (res && logged++ < 3) {
        console.error(`CreateRefund: ${res.status} ${res.error ? JSON.stringify(res.error) : ''}`);
      }
    }
  }
}

export function handleSummary(data) {
  const m = (name) => (data.metrics[name] ? data.metrics[name].values : {});
  const d = m('grpc_req_duration');
  const out = {
    mode: __ENV.MODE || 'closed',
    vus,
    seconds: data.state.testRunDurationMs / 1000,
    requests: m('iterations').count || 0,
    ok: m('refund_ok').count || 0,
    over_refund: m('refund_over_refund').count || 0,
    other_error: m('refund_other_error').count || 0,
    error_rate: m('refund_errors').rate || 0,
    p50_ms: d.med, p95_ms: d['p(95)'], p99_ms: d['p(99)'], max_ms: d.max,
  };
  out.rps = out.requests / out.seconds;
  out.ok_rps = out.ok / out.seconds;
  return { [__ENV.SUMMARY]: JSON.stringify(out, null, 1) };
}
