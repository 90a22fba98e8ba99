// Small touches that need no server: copy buttons for the commands, and where the page is served.

for (const pre of document.querySelectorAll("pre")) {
  if (!navigator.clipboard) break;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", async () => {
    await navigator.clipboard.writeText(pre.querySelector("code").textContent);
    button.textContent = "Copied!";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  pre.append(button);
}

const served = document.getElementById("served");
if (location.host) {
  served.textContent = `Served from ${location.host}`;
  served.hidden = false;
}
