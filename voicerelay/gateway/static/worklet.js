// Two processors in the AudioContext's own rate (24 kHz: set by app.js).
// pcm-capture: posts microphone Float32 blocks to the page, which turns them into PCM16 chunks.
// pcm-player: plays the reply chunks back to back and says what it really played: per item, the
// samples it rendered, posted as {item_id, played_ms} a few times a second while it plays, when it
// runs dry, and at once when it is stopped (barge-in). The page sends these as playback_position.
class PcmCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);

const REPORT_EVERY = sampleRate / 5; // samples between two reports while playing

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // {itemId, samples, offset}
    this.itemId = null; // the item playing (or last played)
    this.played = 0; // its samples rendered
    this.sinceReport = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "play") this.queue.push({ itemId: m.itemId, samples: m.samples, offset: 0 });
      else if (m.type === "stop") { this.queue = []; this.report("stopped"); }
    };
  }
  report(why) {
    if (this.itemId !== null) this.port.postMessage({ type: "position", why, itemId: this.itemId, playedMs: this.played * 1000 / sampleRate });
    this.sinceReport = 0;
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    const wasPlaying = this.queue.length > 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      if (head.itemId !== this.itemId) { if (this.itemId !== null && this.played) this.report("next"); this.itemId = head.itemId; this.played = 0; }
      const n = Math.min(out.length - i, head.samples.length - head.offset);
      out.set(head.samples.subarray(head.offset, head.offset + n), i);
      head.offset += n; i += n; this.played += n; this.sinceReport += n;
      if (head.offset >= head.samples.length) { this.queue.shift(); this.port.postMessage({ type: "chunk_played" }); }
    }
    out.fill(0, i);
    if (wasPlaying && !this.queue.length) this.report("drained");
    else if (this.sinceReport >= REPORT_EVERY) this.report("playing");
    return true;
  }
}
registerProcessor("pcm-player", PcmPlayer);
