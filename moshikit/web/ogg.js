// Ogg framing for Opus (RFC 3533, RFC 7845): what the Moshi chat protocol carries in its audio
// messages. OggWriter turns raw Opus packets (WebCodecs AudioEncoder output) into pages;
// OggReader turns a byte stream of pages, cut anywhere, back into packets.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let j = 0; j < 8; j++) r = (r & 0x80000000) ? ((r << 1) ^ 0x04c11db7) : (r << 1);
    t[i] = r >>> 0;
  }
  return t;
})();

export function oggCrc(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc >>> 0;
}

export function opusHead(sampleRate, preSkip = 312) {
  const b = new Uint8Array(19);
  b.set(new TextEncoder().encode("OpusHead"), 0);
  const v = new DataView(b.buffer);
  b[8] = 1; // version
  b[9] = 1; // channels
  v.setUint16(10, preSkip, true);
  v.setUint32(12, sampleRate, true);
  v.setInt16(16, 0, true); // output gain
  b[18] = 0; // mapping family
  return b;
}

export function opusTags(vendor = "moshikit web") {
  const vend = new TextEncoder().encode(vendor);
  const b = new Uint8Array(8 + 4 + vend.length + 4);
  b.set(new TextEncoder().encode("OpusTags"), 0);
  const v = new DataView(b.buffer);
  v.setUint32(8, vend.length, true);
  b.set(vend, 12);
  v.setUint32(12 + vend.length, 0, true);
  return b;
}

export class OggWriter {
  constructor(serial = (Math.random() * 0xffffffff) >>> 0) {
    this.serial = serial;
    this.seq = 0;
    this.granule = 0; // 48 kHz samples, as RFC 7845 counts them
  }

  // One page holding whole packets (each under 255 * 255 bytes). flags: 2 = first page of the stream.
  page(packets, granule, flags = 0) {
    const lacing = [];
    for (const p of packets) {
      let n = p.length;
      while (n >= 255) { lacing.push(255); n -= 255; }
      lacing.push(n);
    }
    if (lacing.length > 255) throw new Error("too many packets for one Ogg page");
    const body = packets.reduce((s, p) => s + p.length, 0);
    const out = new Uint8Array(27 + lacing.length + body);
    const v = new DataView(out.buffer);
    out.set([0x4f, 0x67, 0x67, 0x53], 0); // "OggS"
    out[4] = 0;
    out[5] = flags;
    v.setUint32(6, granule % 0x100000000, true);
    v.setUint32(10, Math.floor(granule / 0x100000000), true);
    v.setUint32(14, this.serial, true);
    v.setUint32(18, this.seq++, true);
    out[26] = lacing.length;
    out.set(lacing, 27);
    let pos = 27 + lacing.length;
    for (const p of packets) { out.set(p, pos); pos += p.length; }
    v.setUint32(22, oggCrc(out), true);
    return out;
  }

  // The two header pages of an Opus stream (identification, comments).
  headers(sampleRate, preSkip = 312) {
    const a = this.page([opusHead(sampleRate, preSkip)], 0, 2);
    const b = this.page([opusTags()], 0, 0);
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  // A page with one audio packet of `samples48k` samples (at 48 kHz).
  audio(packet, samples48k) {
    this.granule += samples48k;
    return this.page([packet], this.granule, 0);
  }
}

export class OggReader {
  constructor() {
    this.buf = new Uint8Array(0);
    this.partial = []; // pieces of a packet continued on the next page
    this.packets = 0;
  }

  // Complete packets in `bytes` (plus what earlier calls left over). Throws on a non-Ogg stream.
  push(bytes) {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf, 0);
    joined.set(bytes, this.buf.length);
    const out = [];
    let pos = 0;
    while (joined.length - pos >= 27) {
      if (joined[pos] !== 0x4f || joined[pos + 1] !== 0x67 || joined[pos + 2] !== 0x67 || joined[pos + 3] !== 0x53) {
        throw new Error("not an Ogg stream");
      }
      const nseg = joined[pos + 26];
      if (joined.length - pos < 27 + nseg) break;
      let size = 0;
      for (let i = 0; i < nseg; i++) size += joined[pos + 27 + i];
      if (joined.length - pos < 27 + nseg + size) break;
      let at = pos + 27 + nseg;
      for (let i = 0; i < nseg; i++) {
        const len = joined[pos + 27 + i];
        this.partial.push(joined.subarray(at, at + len));
        at += len;
        if (len < 255) {
          const total = this.partial.reduce((s, p) => s + p.length, 0);
          const pkt = new Uint8Array(total);
          let o = 0;
          for (const p of this.partial) { pkt.set(p, o); o += p.length; }
          this.partial = [];
          out.push(pkt);
          this.packets++;
        }
      }
      this.partial = this.partial.map((p) => p.slice());
      pos += 27 + nseg + size;
    }
    this.buf = joined.slice(pos);
    return out;
  }
}
