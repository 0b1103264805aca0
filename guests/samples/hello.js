// cella's JavaScript example: the request body in, the returned value out (as JSON unless
// it is a string or bytes); console.log goes to the invocation's log. At deploy the platform
// evaluates this module in the JavaScript plug-in and snapshots it, so every invocation
// starts from that snapshot in a fresh, private context.
const greeting = "Hello";
let invocations = 0; // always 0 when a request arrives: nothing survives an invocation

export default function handler(request) {
  invocations += 1;
  const { name = "world" } = request.body ? request.json() : {};
  console.log(`greeting ${name}`);
  return { message: `${greeting}, ${name}!`, invocations };
}
