// Server-sent events from a fetch() body: yields each event's data (its `data:` lines joined
// with newlines); comments (`: keep-alive`) and other fields are skipped.

export async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = boundary(buffer)) !== null) {
        const data = dataOf(buffer.slice(0, end.at));
        buffer = buffer.slice(end.at + end.length);
        if (data !== null) yield data;
      }
    }
    const last = dataOf(buffer);
    if (last !== null) yield last;
  } finally {
    reader.cancel().catch(() => {}); // a consumer that stopped early closes the stream
  }
}

/** Where the first event ends: a blank line, in any of SSE's three line endings. */
function boundary(text) {
  const found = /\r\n\r\n|\n\n|\r\r/.exec(text);
  return found ? { at: found.index, length: found[0].length } : null;
}

function dataOf(event) {
  const lines = [];
  for (const line of event.split(/\r\n|\n|\r/)) {
    if (line.startsWith("data:")) lines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
  }
  return lines.length ? lines.join("\n") : null;
}
