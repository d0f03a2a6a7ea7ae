// Greeter.GreetMany: items as they come, Ctrl-C interrupts the handler.
import { Client, defineEntity, stream } from "@cluster-sst/client";

const Greeter = defineEntity("Greeter", {
  GreetMany: stream<{ name: string; count: number; delay_ms: number }, { message: string; index: number }, { count: number }>(),
});

const client = new Client();
const controller = new AbortController();
process.once("SIGINT", () => controller.abort());
const items = client.entity(Greeter, process.argv[2] ?? "Test").GreetMany(
  { name: "John", count: Number(process.argv[3] ?? 10), delay_ms: 200 },
  { signal: controller.signal },
);
try {
  for await (const item of items) console.log(JSON.stringify(item));
  console.log(JSON.stringify(await items.final));
} catch (error) {
  console.error(String(error));
  process.exitCode = 1;
} finally {
  client.close();
}
