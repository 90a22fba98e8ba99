// The Todo list, kept in this browser in the shape of the `todos` table. A page must never hold
// the account's API key (anyone can read it), so it does not call the Mosaic API.

const STORAGE_KEY = "mosaic-todo";

const form = document.getElementById("new-todo");
const input = document.getElementById("task");
const list = document.getElementById("todos");
const empty = document.getElementById("empty");
const count = document.getElementById("count");
const filters = document.querySelectorAll("[data-filter]");

let todos = load();
let filter = "all";

function load() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY)) ?? [];
  } catch {
    return [];
  }
}

function save() {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(todos));
}

function add(task) {
  const id = todos.reduce((max, todo) => Math.max(max, todo.id), 0) + 1;
  todos.push({ id, task, done: false, created_at: new Date().toISOString() });
}

function visible(todo) {
  return filter === "all" || (filter === "done") === todo.done;
}

function render() {
  list.replaceChildren(
    ...todos.filter(visible).map((todo) => {
      const item = document.createElement("li");
      item.classList.toggle("done", todo.done);

      const check = document.createElement("input");
      check.type = "checkbox";
      check.checked = todo.done;
      check.setAttribute("aria-label", `Done: ${todo.task}`);
      check.addEventListener("change", () => update(() => (todo.done = check.checked)));

      const task = document.createElement("span");
      task.className = "task";
      task.textContent = todo.task;

      const created = document.createElement("time");
      created.dateTime = todo.created_at;
      created.textContent = new Date(todo.created_at).toLocaleDateString();

      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Delete: ${todo.task}`);
      remove.addEventListener("click", () => update(() => todos.splice(todos.indexOf(todo), 1)));

      item.append(check, task, created, remove);
      return item;
    }),
  );
  const open = todos.filter((todo) => !todo.done).length;
  count.textContent = `${open} open`;
  empty.hidden = list.children.length > 0;
  empty.textContent = todos.length ? "No tasks here." : "Nothing to do. Add a task above.";
  for (const button of filters) {
    button.setAttribute("aria-pressed", String(button.dataset.filter === filter));
  }
}

function update(change) {
  change();
  save();
  render();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const task = input.value.trim();
  if (!task) return;
  update(() => add(task));
  form.reset();
  input.focus();
});

for (const button of filters) {
  button.addEventListener("click", () => {
    filter = button.dataset.filter;
    render();
  });
}

document.getElementById("clear-done").addEventListener("click", () => {
  update(() => (todos = todos.filter((todo) => !todo.done)));
});

render();
