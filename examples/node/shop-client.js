// How a shop's Node.js application talks to sessionrec over Kafka, with KafkaJS.
//
//   npm ci
//   node shop-client.js send u42 view 1001          # one interaction event
//   node shop-client.js item 1001 "Trail shoe" 89    # one catalog upsert (name, price)
//   node shop-client.js listen [u42]                 # recommendations as they arrive
//
// Environment: KAFKA_BOOTSTRAP (default localhost:9092), EVENTS_TOPIC, ITEMS_TOPIC,
// RECOMMENDATIONS_TOPIC, LISTEN_COUNT (stop after this many), FROM_BEGINNING=1, IDEMPOTENT=0 (for
// a broker that refuses KafkaJS's idempotent producer: the embedded broker of `sessionrec
// broker`, Tansu 0.6.0, answers its InitProducerId with an error; Apache Kafka takes it).
// The message formats are those of docs/integration.md.
'use strict';

const { Kafka, Partitioners, logLevel } = require('kafkajs');

const env = process.env;
const kafka = new Kafka({
  clientId: 'shop-client',
  brokers: (env.KAFKA_BOOTSTRAP || 'localhost:9092').split(','),
  logLevel: logLevel.WARN,
});
const topics = {
  events: env.EVENTS_TOPIC || 'events',
  items: env.ITEMS_TOPIC || 'items',
  recommendations: env.RECOMMENDATIONS_TOPIC || 'recommendations',
};

function producer() {
  // THE PARTITIONER NOTE. Events are keyed by user_id, so that all of a user's events reach the
  // one worker that holds the user's session. The query API finds that worker by Kafka's
  // murmur2 hash of the key. KafkaJS's DefaultPartitioner is that hash (as the Java client's);
  // its LegacyPartitioner is not: keep the default, and name it so that it stays.
  return kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    idempotent: env.IDEMPOTENT !== '0', // no duplicates when the producer retries
  });
}

async function send(messages, topic) {
  const p = producer();
  await p.connect();
  try {
    await p.send({ topic, messages });
  } finally {
    await p.disconnect();
  }
}

// One interaction: view, cart, remove_from_cart or buy. The key is the user_id.
function eventMessage(userId, type, itemId, tsMs = Date.now()) {
  const event = { user_id: userId, item_id: itemId, type, ts: tsMs };
  return { key: userId, value: JSON.stringify(event) };
}

// A catalog upsert. The key is the item_id: the topic keeps each item's latest record.
function itemMessage(item) {
  return { key: String(item.item_id), value: JSON.stringify(item) };
}

// Calls onAnswer(answer) for each recommendation message; resolves after `count` of them.
async function listen(onAnswer, { count = 0, fromBeginning = false } = {}) {
  const consumer = kafka.consumer({ groupId: `shop-client-${process.pid}-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic: topics.recommendations, fromBeginning });
  let seen = 0;
  await new Promise((resolve, reject) => {
    consumer
      .run({
        eachMessage: async ({ message }) => {
          if (onAnswer(JSON.parse(message.value.toString()))) seen += 1;
          if (count && seen >= count) resolve();
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();
}

async function main(argv) {
  const [command, ...args] = argv;
  if (command === 'send' && args.length === 3) {
    const [userId, type, itemId] = args;
    await send([eventMessage(userId, type, itemId)], topics.events);
  } else if (command === 'item' && args.length >= 1) {
    const [itemId, name, price] = args;
    const item = { item_id: itemId };
    if (name) item.name = name;
    if (price) item.price = Number(price);
    await send([itemMessage(item)], topics.items);
  } else if (command === 'listen') {
    const [user] = args;
    await listen(
      (answer) => {
        if (user && answer.user_id !== user) return false;
        console.log(`${answer.user_id}: ${answer.items.map((i) => i.item_id).join(' ')}`);
        return true;
      },
      { count: Number(env.LISTEN_COUNT || 0), fromBeginning: env.FROM_BEGINNING === '1' },
    );
  } else {
    console.error('usage: shop-client.js send USER TYPE ITEM | item ITEM [NAME [PRICE]] | listen [USER]');
    process.exitCode = 2;
  }
}

module.exports = { eventMessage, itemMessage, listen, producer, send };

if (require.main === module) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(`shop-client: ${err.message}`);
    process.exit(1);
  });
}
