// swimlock's client endpoint driven by ioredis (RESP2), as an application would.
// Usage: node ioredis.js PORT. Exits non-zero on the first failed check.
const Redis = require("ioredis");
const port = Number(process.argv[2]);

function check(what, cond) {
  console.log((cond ? "ok   " : "FAIL ") + what);
  if (!cond) process.exit(1);
}

async function errorOf(p) {
  try { await p; } catch (e) { return e.message; }
  return null;
}

(async () => {
  // Connects with its ready check (INFO, read for `loading:0`).
  const a = new Redis({ port, maxRetriesPerRequest: 0 });
  const b = new Redis({ port, maxRetriesPerRequest: 0 });
  check("PING", (await a.ping()) === "PONG");
  const t1 = await a.call("LOCK", "js/a", "1000");
  check(`LOCK replies the token (${t1})`, Number(t1) > 0);
  check("re-entry gets the same token", (await a.call("LOCK", "js/a", "1000")) === t1);
  check("TRYLOCK of a held lock is null", (await b.call("TRYLOCK", "js/a")) === null);
  const started = Date.now();
  const e = await errorOf(b.call("LOCK", "js/a", "300"));
  check(`a blocking LOCK times out with TIMEOUT (${e})`, e && e.startsWith("TIMEOUT") && Date.now() - started >= 250);
  const p = await a.pipeline()
    .call("HOLDS", "js/a").call("UNLOCK", "js/a").call("UNLOCK", "js/a").call("UNLOCK", "js/a").call("HOLDS", "js/a")
    .exec();
  check(`pipelined replies in order (${JSON.stringify(p.map(([err, v]) => err ? err.message : v))})`,
    p[0][1] === 2 && p[1][1] === "OK" && p[2][1] === "OK" && p[3][0] && p[3][0].message.startsWith("NOTHELD") && p[4][1] === 0);
  check("the other connection takes it once free", Number(await b.call("TRYLOCK", "js/a")) > Number(t1));
  const s = await a.call("STATUS");
  check("STATUS is a flat list of keys and values over RESP2", Array.isArray(s) && s.includes("view_id"));
  check("unknown commands are errors", (await errorOf(a.call("SELECT", "1"))) !== null);
  check("the connection still serves", (await a.ping()) === "PONG");
  b.disconnect();
  let t = null;
  for (let i = 0; i < 250 && t === null; i++) {
    t = await a.call("TRYLOCK", "js/a");
    if (t === null) await new Promise((r) => setTimeout(r, 20));
  }
  check("a dropped connection's lock is released", t !== null);
  await a.quit();
  console.log("ioredis: all checks passed");
})().catch((e) => { console.log("FAIL " + e); process.exit(1); });
