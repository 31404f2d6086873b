// Audio worklets: "capture" hands the microphone to the page in 20 ms chunks; "player" plays
// Moshi's audio through a small jitter buffer and reports its health.

class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = (options.processorOptions && options.processorOptions.chunk) || 480;
    this.buf = new Float32Array(this.size);
    this.fill = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      let i = 0;
      while (i < ch.length) {
        const n = Math.min(ch.length - i, this.size - this.fill);
        this.buf.set(ch.subarray(i, i + n), this.fill);
        this.fill += n;
        i += n;
        if (this.fill === this.size) {
          this.port.postMessage(this.buf, [this.buf.buffer]);
          this.buf = new Float32Array(this.size);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

class Player extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.start = Math.round((o.startSeconds || 0.12) * sampleRate); // buffered before (re)starting
    this.max = Math.round((o.maxSeconds || 1.0) * sampleRate); // beyond this the oldest is dropped
    this.queue = [];
    this.offset = 0; // read position in queue[0]
    this.buffered = 0;
    this.playing = false;
    this.underruns = 0;
    this.dropped = 0;
    this.played = 0;
    this.sq = 0;
    this.sqn = 0;
    this.lastReport = 0;
    this.port.onmessage = (e) => {
      if (e.data === "reset") {
        this.queue = []; this.offset = 0; this.buffered = 0; this.playing = false;
        return;
      }
      this.queue.push(e.data);
      this.buffered += e.data.length;
      while (this.buffered - this.offset > this.max && this.queue.length > 1) {
        const old = this.queue.shift();
        this.buffered -= old.length;
        this.dropped += old.length - this.offset;
        this.offset = 0;
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let avail = this.buffered - this.offset;
    if (!this.playing && avail >= this.start) this.playing = true;
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.queue.length) {
        const head = this.queue[0];
        const n = Math.min(out.length - i, head.length - this.offset);
        out.set(head.subarray(this.offset, this.offset + n), i);
        for (let k = i; k < i + n; k++) this.sq += out[k] * out[k];
        this.sqn += n;
        i += n;
        this.offset += n;
        if (this.offset >= head.length) {
          this.queue.shift();
          this.buffered -= head.length;
          this.offset = 0;
        }
      }
      this.played += i;
      if (i < out.length) { // ran dry: silence until the buffer refills
        this.playing = false;
        this.underruns++;
      }
    }
    for (let k = i; k < out.length; k++) out[k] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (currentTime - this.lastReport > 0.2) {
      this.lastReport = currentTime;
      this.port.postMessage({
        buffered: (this.buffered - this.offset) / sampleRate, underruns: this.underruns,
        dropped: this.dropped / sampleRate, played: this.played / sampleRate,
        rms: this.sqn ? Math.sqrt(this.sq / this.sqn) : 0, playing: this.playing,
      });
      this.sq = 0; this.sqn = 0;
    }
    return true;
  }
}

registerProcessor("capture", Capture);
registerProcessor("player", Player);
