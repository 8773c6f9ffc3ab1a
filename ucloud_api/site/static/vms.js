// The list's Screen and Serial buttons: a ticket from the site (as the session's user), then its page.
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const message = document.getElementById("message");

async function open(vm, kind) {
    message.hidden = true;
    let answer;
    try {
        const response = await fetch(`vms/${encodeURIComponent(vm)}/console`, {
            method: "POST",
            headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
            body: JSON.stringify({ type: kind }),
        });
        answer = await response.json();
    } catch (error) {
        answer = { error: { message: `the console site did not answer: ${error}` } };
    }
    if (answer.url) {
        // This site's own page (not the answer's absolute `page`, which is for API clients).
        location.assign(`${kind}#${answer.url}`);
    } else {
        message.textContent = answer.error ? answer.error.message : "no ticket was given";
        message.hidden = false;
    }
}

for (const button of document.querySelectorAll("#vms button[data-kind]")) {
    button.addEventListener("click", () => open(button.closest("tr").dataset.vm, button.dataset.kind));
}
