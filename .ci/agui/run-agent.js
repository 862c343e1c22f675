// Starts a run on `portia serve` with the AG-UI protocol's own HTTP client
// (@ag-ui/client's HttpAgent), as an application would, and prints each event it
// receives as a JSON line; exits 1 if the run fails or the client rejects the stream.
const { HttpAgent } = require("@ag-ui/client");

const [url, query] = process.argv.slice(2);
const agent = new HttpAgent({ url, threadId: "client-thread" });
agent.addMessage({ id: "m1", role: "user", content: query });
const seen = [];
agent
  .runAgent({ runId: "client-run" }, {
    onEvent({ event }) {
      seen.push(event.type);
      console.log(JSON.stringify(event));
    },
  })
  .then((result) => {
    console.error(`finished: ${seen.length} events, ${agent.messages.length} messages`);
    process.exit(seen.includes("RUN_FINISHED") ? 0 : 1);
  })
  .catch((error) => {
    console.error(`the client failed: ${error && error.stack ? error.stack : error}`);
    process.exit(1);
  });
