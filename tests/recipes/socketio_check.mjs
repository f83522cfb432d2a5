// Runs the README's Socket.IO snippet (the block marked
// `<!-- recipe: socketio -->`, a file next to this one named in argv[2]) in
// Node with the real socket.io-client, against the gateway the test started.
// The snippet is an ES module that uses a free `token`, which this sets from
// $TOKEN. To see what the snippet's listeners get without editing it, this
// wraps Socket#on (the same module instance the snippet imports: both files
// resolve `socket.io-client` from the same node_modules) and prints one line
// per listener call: {"on":"<event>","args":[...]}. The snippet's own
// console.log output goes to stdout as it is. Run by tests/readme.rs, which
// kills it when done; it also exits by itself after 60 s.
import { Socket } from "socket.io-client";
import { pathToFileURL } from "node:url";

setTimeout(() => {
  process.stderr.write("socketio_check.mjs: exiting after 60 s\n");
  process.exit(3);
}, 60_000).unref();

const on = Socket.prototype.on;
Socket.prototype.on = function (event, listener) {
  return on.call(this, event, (...args) => {
    const plain = args.map((a) => (typeof a === "function" ? null : a));
    process.stdout.write(JSON.stringify({ on: event, args: plain }) + "\n");
    return listener(...args);
  });
};

globalThis.token = process.env.TOKEN;
await import(pathToFileURL(process.argv[2]).href);
