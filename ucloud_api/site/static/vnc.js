// The VM's screen: noVNC on our own websocket (so that a refusal's reason can be shown).
import RFB from "../vendor/novnc/core/rfb.js";
import { closed, show, takeUrl } from "./viewer.js";

const url = takeUrl();
if (url) {
    const channel = new WebSocket(url);
    channel.addEventListener("close", closed);
    const rfb = new RFB(document.getElementById("screen"), channel, { shared: true });
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => show("connected"));
}
