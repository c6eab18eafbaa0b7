// Where the console's views live (History-API paths; the server answers index.html for all).

export const BASE = "/console";
export const paths = {
  signIn: (next?: string) => `${BASE}/signin${next ? `?next=${encodeURIComponent(next)}` : ""}`,
  batches: () => `${BASE}/batches`,
  newBatch: () => `${BASE}/batches/new`,
  batch: (id: string) => `${BASE}/batches/${encodeURIComponent(id)}`,
  refunds: () => `${BASE}/refunds`,
  refund: (id: string) => `${BASE}/refunds/${encodeURIComponent(id)}`,
  approvals: () => `${BASE}/approvals`,
};

export type { ViewContext } from "./main.js";
