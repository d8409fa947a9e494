// Audio capture for the wavlm-stream demo, running in the AudioWorklet thread.
//
// Takes the context's audio (any rate, any channel count), mixes it to mono, low-pass
// filters it below the 8 kHz Nyquist of 16 kHz and samples it at 16 kHz, converts to PCM16
// and posts ~100 ms Int16Array buffers to the page, which sends them over the websocket.
//
// Loaded as a classic script outside a worklet (for tests), it only defines
// globalThis.Resampler.

/**
 * Band-limited resampler: a windowed-sinc low-pass evaluated at the fractional input
 * position of every output sample (polyphase table), so filtering and decimation are one
 * step and non-integer ratios (44.1 kHz -> 16 kHz) are exact up to the table's resolution.
 */
class Resampler {
  /**
   * @param {number} inRate  input sample rate (Hz)
   * @param {number} outRate output sample rate (Hz), 16000 for the server
   * @param {number} passHz  edge of the passband; the stopband starts at outRate / 2
   */
  constructor(inRate, outRate = 16000, passHz = 7000) {
    this.step = inRate / outRate;              // input samples per output sample
    const stopHz = Math.min(outRate, inRate) / 2;
    passHz = Math.min(passHz, 0.875 * stopHz);
    const cutoff = (passHz + stopHz) / 2 / inRate;            // cycles per input sample
    // A Blackman window's transition band is about 5.5 / taps cycles per sample wide.
    this.half = Math.ceil(5.5 * inRate / (stopHz - passHz) / 2);
    this.phases = 256;
    const taps = 2 * this.half;
    this.table = new Float32Array(this.phases * taps);
    for (let p = 0; p < this.phases; p++) {
      const frac = p / this.phases;
      let sum = 0;
      for (let k = 0; k < taps; k++) {
        const u = (k - this.half + 1) - frac;  // distance of input sample k from the output point
        const x = 2 * cutoff * u;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = Math.abs(u) >= this.half ? 0
          : 0.42 + 0.5 * Math.cos(Math.PI * u / this.half) + 0.08 * Math.cos(2 * Math.PI * u / this.half);
        const h = 2 * cutoff * sinc * w;
        this.table[p * taps + k] = h;
        sum += h;
      }
      for (let k = 0; k < taps; k++) this.table[p * taps + k] /= sum;  // unity gain at DC
    }
    // Pending input, starting with half - 1 zeros so that output 0 is centred on input 0.
    this.buf = new Float32Array(4096);
    this.len = this.half - 1;
    this.pos = this.half - 1;                  // input position of the next output sample
  }

  /** Resample the next block of input; returns the output samples it completes. */
  process(input) {
    if (this.len + input.length > this.buf.length) {
      const grown = new Float32Array(Math.max(2 * this.buf.length, this.len + input.length));
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const taps = 2 * this.half;
    const out = [];
    for (;;) {
      let i = Math.floor(this.pos);
      let p = Math.round((this.pos - i) * this.phases);
      if (p === this.phases) { i += 1; p = 0; }  // nearest phase is the next whole sample
      if (i + this.half >= this.len) break;      // needs input that has not arrived yet
      const row = p * taps;
      let acc = 0;
      for (let k = 0, j = i - this.half + 1; k < taps; k++, j++) acc += this.buf[j] * this.table[row + k];
      out.push(acc);
      this.pos += this.step;
    }
    // Drop the input no later output needs.
    const keep = Math.floor(this.pos) - this.half + 1;
    if (keep > 0) {
      this.buf.copyWithin(0, keep, this.len);
      this.len -= keep;
      this.pos -= keep;
    }
    return Float32Array.from(out);
  }
}

/** Float samples in [-1, 1] to PCM16 (clipped, rounded). */
function toPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(s < 0 ? s * 32768 : s * 32767);
  }
  return out;
}

if (typeof registerProcessor === "function") {
  class Pcm16Capture extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const opts = options.processorOptions || {};
      this.outRate = opts.targetRate || 16000;
      this.resampler = new Resampler(sampleRate, this.outRate);
      this.chunk = Math.round(this.outRate * (opts.chunkMs || 100) / 1000);
      this.pending = [];
      this.pendingLength = 0;
      this.port.onmessage = (e) => {
        if (e.data === "flush") {
          // Push the last few milliseconds through the filter's lookahead.
          const tail = this.resampler.process(new Float32Array(this.resampler.half));
          if (tail.length) { this.pending.push(tail); this.pendingLength += tail.length; }
          this.post();
          this.port.postMessage({ flushed: true });
        }
      };
    }

    post() {
      if (!this.pendingLength) return;
      const all = new Float32Array(this.pendingLength);
      let at = 0;
      for (const part of this.pending) { all.set(part, at); at += part.length; }
      this.pending = [];
      this.pendingLength = 0;
      const pcm = toPcm16(all);
      this.port.postMessage(pcm.buffer, [pcm.buffer]);
    }

    process(inputs) {
      const channels = inputs[0];
      if (!channels || channels.length === 0) return true;  // nothing connected yet
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(channels[0].length);
        for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
      }
      const out = this.resampler.process(mono);
      if (out.length) {
        this.pending.push(out);
        this.pendingLength += out.length;
      }
      if (this.pendingLength >= this.chunk) this.post();
      return true;
    }
  }
  registerProcessor("pcm16-capture", Pcm16Capture);
} else {
  globalThis.Resampler = Resampler;
  globalThis.toPcm16 = toPcm16;
}
