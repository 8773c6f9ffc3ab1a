// What the two viewer pages share: the websocket URL from the page's fragment (the API's ticket answer
// links `page#url`; a fragment is sent to no server), and the line that says how the console is.

export function takeUrl() {
    const url = decodeURIComponent(location.hash.slice(1));
    // The ticket in it is spent once connected: keep it out of the history and any bookmark.
    history.replaceState(null, "", location.pathname);
    if (!/^wss?:\/\//.test(url)) {
        show("no console to open: use the Screen or Serial button of your VM in the list", true);
        return null;
    }
    return url;
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
