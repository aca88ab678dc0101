// Publish one job to hadis, wait for its terminal state, save the image. docs/backends.md explains
// each step; docs/jobs.md is the contract (fields, queues, keys, states).
//
//   npm ci && node publish.mjs "a red bicycle" --out bike.png [--slo 30] [--timeout 120]
//
// AMQP_URL, REDIS_URL and HADIS_NAMESPACE say where the stack is (defaults: a local `make run`).
// Prints the job record as JSON. Exit code: 0 done, 1 failed or expired, 2 not finished in time,
// 3 the stack could not be reached.
import { randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import amqp from "amqplib";
import { createClient, RESP_TYPES } from "redis";

const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0";
const NAMESPACE = process.env.HADIS_NAMESPACE ?? "hadis";
const TERMINAL = new Set(["done", "failed", "expired"]);

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: "string" },
    slo: { type: "string" },
    timeout: { type: "string", default: "120" },
  },
});
if (positionals.length !== 1) {
  console.error('usage: node publish.mjs "PROMPT" [--out FILE] [--slo SECONDS] [--timeout SECONDS]');
  process.exit(64);
}

// The Job (docs/job.schema.json): only `prompt` is required. job_id is the idempotency key:
// publishing the same id again never produces a second image.
const job = {
  job_id: randomUUID().replaceAll("-", ""),
  prompt: positionals[0],
  submitted_at: Date.now() / 1000,
  metadata: { source: "node-example" },
};
if (options.slo) job.slo_s = Number(options.slo);

// Publish persistently to the default exchange, routed to `<ns>.requests`, with publisher confirms.
// mandatory: a message that reaches no queue comes back (the stack was never started here).
async function publish(job) {
  const connection = await amqp.connect(AMQP_URL);
  try {
    const channel = await connection.createConfirmChannel();
    let returned = false;
    channel.on("return", () => {
      returned = true;
    });
    channel.publish("", `${NAMESPACE}.requests`, Buffer.from(JSON.stringify(job)), {
      persistent: true,
      contentType: "application/json",
      messageId: job.job_id,
      mandatory: true,
    });
    await channel.waitForConfirms(); // rejects on a nack: the queue is full, back off and retry
    if (returned) throw new Error(`no queue ${NAMESPACE}.requests: is the stack running?`);
  } finally {
    await connection.close();
  }
}

// Subscribe first, then read the record: a completion between the two cannot be missed.
// The wait is bounded, and the record is re-read after every message or 5 s without one.
async function waitForTerminal(redis, jobId, timeoutS) {
  const subscriber = redis.duplicate();
  await subscriber.connect();
  let wake = () => {};
  await subscriber.subscribe(`${NAMESPACE}:done:${jobId}`, () => wake());
  try {
    const giveUpAt = Date.now() + timeoutS * 1000;
    for (;;) {
      const record = await redis.hGetAll(`${NAMESPACE}:job:${jobId}`);
      if (TERMINAL.has(record.state)) return record;
      const remaining = giveUpAt - Date.now();
      if (remaining <= 0) return null;
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, Math.min(remaining, 5000));
      });
    }
  } finally {
    subscriber.destroy();
  }
}

async function main() {
  const redis = createClient({ url: REDIS_URL });
  redis.on("error", (error) => console.error("redis:", error.message));
  try {
    await redis.connect();
    await publish(job);
  } catch (error) {
    console.error(`cannot reach the stack: ${error.message}`);
    redis.destroy();
    return 3;
  }
  try {
    const record = await waitForTerminal(redis, job.job_id, Number(options.timeout));
    if (record === null) {
      console.log(JSON.stringify({ job_id: job.job_id, error: `not finished within ${options.timeout} s` }));
      return 2;
    }
    record.history = (await redis.lRange(`${NAMESPACE}:job:${job.job_id}:history`, 0, -1)).map((t) => JSON.parse(t));
    if (record.state === "done") {
      // The PNG is binary: read it with blob strings mapped to Buffer.
      const png = await redis.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer }).get(record.image_key);
      const out = options.out ?? `${job.job_id}.png`;
      await writeFile(out, png);
      record.saved_to = out;
    }
    console.log(JSON.stringify(record, null, 2));
    return record.state === "done" ? 0 : 1;
  } finally {
    redis.destroy();
  }
}

process.exitCode = await main();
