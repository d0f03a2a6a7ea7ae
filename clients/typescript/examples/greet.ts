import { Client, defineEntity, rpc } from "@cluster-sst/client";

const Greeter = defineEntity("Greeter", {
  Greet: rpc<{ name: string }, { message: string }>({ persisted: true }),
});

const client = new Client(); // $CLUSTER_PROXY_ADDRESS or 127.0.0.1:3333, key from .local/credentials
const reply = await client.entity(Greeter, "Test").Greet({ name: "John" });
console.log(reply.message);
client.close();
