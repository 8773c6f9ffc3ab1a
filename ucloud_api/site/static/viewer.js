// What the two viewer pages share: the websocket URL from the page's fragment (the API's ticket answer
// links `page#url`; a fragment is sent to no server), and the line that says how the console is.

// The websocket URL to open, or null (said on the page). Only a console proxy ucloud knows is opened:
// a link to this page whose fragment names any other server (a fake terminal that asks for your
// password, on this site's address) is refused.
export function takeUrl() {
    let url;
    try {
        url = new URL(decodeURIComponent(location.hash.slice(1)));
    } catch {
        url = null;
    }
    // The ticket in it is spent once connected: keep it out of the history and any bookmark.
    history.replaceState(null, "", location.pathname);
    if (!url || !/^wss?:$/.test(url.protocol)) {
        show("no console to open: use the Screen or Serial button of your VM in the list", true);
        return null;
    }
    const known = document.querySelector('meta[name="console-proxies"]').content.split(" ").filter(Boolean)
        .map((proxy) => new URL(proxy).origin);
    if (!known.includes(url.origin)) {
        show(`refused: ${url.origin} is no console proxy of this site`, true);
        return null;
    }
    return url.href;
}

export function show(text, failed = false) {
    const state = document.getElementById("state");
    state.textContent = text;
    state.classList.toggle("error", failed);
}

// The proxy closes a connection it refuses with a reason (4403: the ticket; 4503: try again).
export function closed(event) {
    if (event.code === 1000 || event.code === 1005) {
        show("the console ended");
    } else {
        show(`closed: ${event.reason || "the connection to the console proxy was lost"} (${event.code})`, true);
    }
}
