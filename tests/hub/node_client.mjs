// Drives the official openai Node SDK against a hub at $HUB_URL (run by test_api_clients.py).
// Prints one JSON object with what each endpoint answered.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH, "noop.js"));
const OpenAI = require("openai").default ?? require("openai");

const client = new OpenAI({ baseURL: process.env.HUB_URL, apiKey: "unused" });

const chat = await client.chat.completions.create({
  model: "codex",
  messages: [{ role: "user", content: "node chat" }],
});
let streamed = "";
let usage = false;
const stream = await client.chat.completions.create({
  model: "codex",
  messages: [{ role: "user", content: "node stream" }],
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = true;
}
const response = await client.responses.create({ model: "codex", input: "node responses" });
const retrieved = await client.responses.retrieve(response.id);
const models = [];
for await (const model of client.models.list()) models.push(model.id);

console.log(
  JSON.stringify({
    chat: chat.choices[0].message.content,
    stream: streamed,
    usage,
    response: response.output_text,
    retrieved: retrieved.output_text,
    models,
  }),
);
