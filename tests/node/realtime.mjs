// The npm openai package as a Node app uses it: baseURL only, so the SDK forces wss:// (it always
// does). Prints what it saw, one line each, for .ci/node-sdk to check; exits 1 on any error.
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';

const client = new OpenAI({ apiKey: process.env.RTGATE_KEY, baseURL: process.env.RTGATE_URL });
const rt = await OpenAIRealtimeWS.create(client, { model: 'gpt-realtime' });
const fail = (why) => { console.log(`error ${why}`); process.exit(1); };
rt.on('error', (e) => fail(e.message));
setTimeout(() => fail('timeout'), 30000).unref();
rt.on('session.created', () => {
  console.log('session.created');
  rt.send({
    type: 'conversation.item.create',
    item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'hello from node' }] },
  });
  rt.send({ type: 'response.create' });
});
rt.on('response.done', (e) => {
  console.log(`response.done ${e.response.status} ${e.response.usage.total_tokens}`);
  rt.close();
});
rt.socket.on('close', (code) => { console.log(`closed ${code}`); process.exit(0); });
