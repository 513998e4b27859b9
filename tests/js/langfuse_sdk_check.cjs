// The official Langfuse JS SDK (npm "langfuse") against a Langfuse-compatible server:
// create prompts, get them back, compile them. Prints one JSON line of results.
// Usage: node langfuse_sdk_check.cjs BASE_URL PUBLIC_KEY SECRET_KEY
"use strict";
const { Langfuse } = require("langfuse");

async function main() {
  const [baseUrl, publicKey, secretKey] = process.argv.slice(2);
  const langfuse = new Langfuse({ baseUrl, publicKey, secretKey });
  const out = {};
  const created = await langfuse.createPrompt({
    name: "js/greet", prompt: "Hi {{name}}, welcome to {{place}}.",
    labels: ["production"], config: { temperature: 0 }, tags: ["js"],
  });
  out.created = { name: created.name, version: created.version };
  await langfuse.createPrompt({ name: "js/greet", prompt: "v2 {{name}}", labels: ["staging"] });

  const text = await langfuse.getPrompt("js/greet", undefined, { cacheTtlSeconds: 0 });
  out.text = {
    version: text.version, labels: text.labels, config: text.config,
    compiled: text.compile({ name: "Ann", place: "Node" }),
  };
  const staging = await langfuse.getPrompt("js/greet", undefined, {
    label: "staging", cacheTtlSeconds: 0,
  });
  const second = await langfuse.getPrompt("js/greet", 2, { cacheTtlSeconds: 0 });
  out.staging = [staging.version, second.compile({ name: "Bo" })];

  await langfuse.createPrompt({
    name: "js-support", type: "chat", labels: ["production"], prompt: [
      { role: "system", content: "@@@langfusePrompt:name=js/greet|label=production@@@" },
      { type: "placeholder", name: "history" },
      { role: "user", content: "{{question}}" },
    ],
  });
  const chat = await langfuse.getPrompt("js-support", undefined, {
    type: "chat", cacheTtlSeconds: 0,
  });
  out.chat = chat.compile(
    { name: "Cy", place: "JS", question: "Why?" },
    { history: [{ role: "assistant", content: "Earlier" }] },
  );

  const updated = await langfuse.updatePrompt({
    name: "js/greet", version: 2, newLabels: ["production"],
  });
  out.updated = updated.labels;
  const moved = await langfuse.getPrompt("js/greet", undefined, { cacheTtlSeconds: 0 });
  out.moved = moved.version;

  try {
    await langfuse.getPrompt("js/missing", undefined, { cacheTtlSeconds: 0, maxRetries: 0 });
    out.missing = "found?!";
  } catch (err) {
    out.missing = String(err && err.message ? err.message : err).slice(0, 200);
  }
  await langfuse.shutdownAsync();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
