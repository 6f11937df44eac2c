// The sqs-consumer contender: CONCURRENCY consumers in one Node process, each receiving batches of
// 10 with its batch handler, POSTing them to the handler and letting sqs-consumer delete them.
// Usage: node sqs_consumer.mjs QUEUE_URL HANDLER_URL CONCURRENCY
import { Consumer } from "sqs-consumer";
import { SQSClient } from "@aws-sdk/client-sqs";

const [queueUrl, handlerUrl, concurrency] = process.argv.slice(2);
const sqs = new SQSClient({
  endpoint: process.env.AWS_ENDPOINT_URL,
  region: process.env.AWS_REGION ?? "us-east-1",
});

for (let i = 0; i < Number(concurrency); i++) {
  const consumer = Consumer.create({
    queueUrl,
    sqs,
    batchSize: 10,
    waitTimeSeconds: 20,
    handleMessageBatch: async (messages) => {
      const event = { Records: messages.map((m) => ({ messageId: m.MessageId, body: m.Body })) };
      const response = await fetch(handlerUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(event),
      });
      await response.arrayBuffer();
      return messages;
    },
  });
  consumer.on("error", (error) => console.error(error.message));
  consumer.start();
}
