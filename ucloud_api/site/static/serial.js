// The VM's first serial port in a terminal: bytes both ways, as the proxy relays them.
import { Terminal } from "../vendor/xterm/lib/xterm.mjs";
import { closed, show, takeUrl } from "./viewer.js";

const url = takeUrl();
if (url) {
    const terminal = new Terminal({ convertEol: false, scrollback: 5000 });
    terminal.open(document.getElementById("terminal"));
    terminal.focus();
    const channel = new WebSocket(url);
    channel.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    channel.addEventListener("open", () => show("connected"));
    channel.addEventListener("message", (event) => terminal.write(new Uint8Array(event.data)));
    channel.addEventListener("close", (event) => {
        closed(event);
        terminal.options.disableStdin = true;
    });
    terminal.onData((data) => {
        if (channel.readyState === WebSocket.OPEN) channel.send(encoder.encode(data));
    });
}
