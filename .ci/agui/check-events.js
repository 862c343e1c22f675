// Parses every AG-UI event in a file (one JSON object a line) with the schemas the
// protocol publishes in @ag-ui/core; prints each one that fails and exits 1 if any did.
const fs = require("fs");
const { EventSchemas, RunAgentInputSchema } = require("@ag-ui/core/schemas");

const [file, inputFile] = process.argv.slice(2);
let failed = 0;
const lines = fs.readFileSync(file, "utf8").split("\n").filter((line) => line.trim());
for (const line of lines) {
  const result = EventSchemas.safeParse(JSON.parse(line));
  if (!result.success) {
    failed += 1;
    console.error(`not an AG-UI event: ${line}\n${result.error}`);
  }
}
if (inputFile) {
  const result = RunAgentInputSchema.safeParse(JSON.parse(fs.readFileSync(inputFile, "utf8")));
  if (!result.success) {
    failed += 1;
    console.error(`not a RunAgentInput: ${result.error}`);
  }
}
console.log(`${lines.length - failed} of ${lines.length} events valid`);
process.exit(failed ? 1 : 0);
