// Captures microphone audio in the AudioContext's own rate (24 kHz: set by app.js) and posts
// Float32 blocks to the page, which turns them into PCM16 chunks.
class PcmCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
