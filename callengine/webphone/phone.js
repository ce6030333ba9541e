// The callengine web phone: JsSIP over WSS (RFC 7118), WebRTC media answered by the
// engine (media/webrtc.py). It registers as a tenant user (digest auth), shows the
// incoming call, answers, hangs up and sends DTMF (SIP INFO, JsSIP's default).
// window.phone is also what the browser test drives (tests/integration/test_webrtc.py).
"use strict";

const phone = (() => {
  const $ = (id) => document.getElementById(id);
  const state = { registered: false, call: null, incoming: null, events: [] };
  let ua = null;
  let session = null;
  let recorder = null;

  function event(kind, data) {
    state.events.push(Object.assign({ kind, at: Date.now() }, data || {}));
  }

  function show() {
    $("status").textContent = state.call ? `call ${state.call}` :
      state.registered ? "registered" : "not registered";
    $("incoming").textContent = state.incoming ? `Incoming call from ${state.incoming}` : "";
    $("answer").disabled = !(session && state.call === "ringing");
    $("call").disabled = !ua || !!session;
    $("hangup").disabled = !session;
  }

  // What the page hears, as 8 kHz PCM (WebAudio), for the test to compare with what
  // the caller played. Chromium feeds a remote WebRTC stream to WebAudio only while a
  // media element plays it too: the <audio> element does.
  function record(stream) {
    const ctx = new AudioContext({ sampleRate: 8000 });
    const source = ctx.createMediaStreamSource(stream);
    const node = ctx.createScriptProcessor(1024, 1, 1);
    const chunks = [];
    node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    source.connect(node);
    node.connect(ctx.destination);
    ctx.resume();
    recorder = { ctx, node, chunks };
  }

  function attach(pc) {
    pc.addEventListener("track", (e) => {
      const stream = e.streams[0] || new MediaStream([e.track]);
      $("remote").srcObject = stream;
      record(stream);
      event("track");
    });
  }

  function register(opts) {
    const o = opts || {};
    const user = o.user || $("user").value;
    const domain = o.domain || $("domain").value;
    const server = o.server || $("server").value;
    if (ua) ua.stop();
    ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(server)],
      uri: `sip:${user}@${domain}`,
      authorization_user: user,
      password: o.password || $("password").value,
      register: true,
      session_timers: false,
      user_agent: "callengine-webphone",
    });
    ua.on("registered", () => { state.registered = true; event("registered"); show(); });
    ua.on("unregistered", () => { state.registered = false; event("unregistered"); show(); });
    ua.on("registrationFailed", (e) => {
      state.registered = false;
      event("registrationFailed", { cause: e.cause });
      $("status").textContent = `registration failed: ${e.cause}`;
    });
    ua.on("newRTCSession", (e) => {
      if (session) {
        if (e.originator === "remote") e.session.terminate({ status_code: 486 });
        return;
      }
      follow(e.session, e.originator);
    });
    ua.start();
    show();
  }

  // opts.raw: no echo cancellation, noise suppression nor gain control on the
  // microphone (a headset, or a test comparing what was played with what was heard).
  function follow(s, originator) {
    session = s;
    state.call = originator === "remote" ? "ringing" : "calling";
    state.incoming = originator === "remote" ? s.remote_identity.uri.user : null;
    event(originator === "remote" ? "incoming" : "outgoing", { peer: s.remote_identity.uri.user });
    s.on("peerconnection", (p) => attach(p.peerconnection));
    s.on("accepted", () => { state.call = "answered"; event("answered"); show(); });
    s.on("confirmed", () => { state.call = "confirmed"; event("confirmed"); show(); });
    const end = (kind) => (x) => {
      event(kind, { cause: x.cause, originator: x.originator });
      session = null;
      state.call = null;
      state.incoming = null;
      show();
    };
    s.on("ended", end("ended"));
    s.on("failed", end("failed"));
    show();
  }

  function constraints(opts) {
    const raw = opts && opts.raw;
    return raw ?
      { echoCancellation: false, noiseSuppression: false, autoGainControl: false } : true;
  }

  // Call a number of the tenant (its IVR, a user); opts.raw as for answer().
  function call(target, opts) {
    if (!ua || session) return false;
    ua.call(target, {
      mediaConstraints: { audio: constraints(opts), video: false },
      pcConfig: { iceServers: [] },
    });
    if (session && session.connection) attach(session.connection);
    return true;
  }

  function answer(opts) {
    if (!session) return false;
    session.answer({
      mediaConstraints: { audio: constraints(opts), video: false },
      pcConfig: { iceServers: [] },
    });
    if (session.connection) attach(session.connection);
    return true;
  }

  function hangup() {
    if (!session) return false;
    session.terminate();
    return true;
  }

  // Close the call's peer connection and nothing else (no BYE): what a crashed media
  // stack looks like to the node. For tests.
  function dropMedia() {
    if (!session || !session.connection) return false;
    session.connection.close();
    return true;
  }

  function dtmf(digits) {
    if (!session) return false;
    session.sendDTMF(digits, { duration: 120, interToneGap: 100 });
    event("dtmf", { digits });
    return true;
  }

  // The recording so far as base64 little-endian int16 at 8 kHz.
  function recording() {
    if (!recorder) return "";
    const total = recorder.chunks.reduce((n, c) => n + c.length, 0);
    const pcm = new Int16Array(total);
    let i = 0;
    for (const chunk of recorder.chunks) {
      for (const v of chunk) pcm[i++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
    }
    const bytes = new Uint8Array(pcm.buffer);
    let text = "";
    for (let j = 0; j < bytes.length; j += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(j, j + 0x8000));
    }
    return btoa(text);
  }

  function init() {
    const keypad = $("keypad");
    for (const d of "123456789*0#") {
      const b = document.createElement("button");
      b.textContent = d;
      b.onclick = () => dtmf(d);
      keypad.appendChild(b);
    }
    $("register").onclick = () => register();
    $("answer").onclick = () => answer();
    $("call").onclick = () => call($("target").value);
    $("hangup").onclick = () => hangup();
    fetch("config.json").then((r) => r.json()).then((c) => {
      if (!$("server").value && c.server) $("server").value = c.server;
    }).catch(() => {});
    show();
  }

  document.addEventListener("DOMContentLoaded", init);
  return { state, register, call, answer, hangup, dtmf, recording, dropMedia };
})();
window.phone = phone;
