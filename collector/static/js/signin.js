// A one-time sign-in link: spend its code (POST, once) for a crew token kept on this phone.
import {$, nextPage, setToken} from "./common.js";

async function signIn() {
  const code = location.pathname.split("/").pop();
  let response, body;
  try {
    response = await fetch("/api/v1/signin/" + encodeURIComponent(code), {method: "POST"});
    body = await response.json().catch(() => ({}));
  } catch (e) {
    fail("Cannot reach CityGate — check the phone's connection and open the link again.");
    return;
  }
  if (!response.ok) {
    const again = response.headers.get("Retry-After");
    fail((typeof body.detail === "string" ? body.detail : `sign-in failed (HTTP ${response.status})`) +
      (again ? ` Try again in ${again} s.` : ""));
    return;
  }
  setToken(body.token);
  document.body.dataset.signin = "done";
  $("signin-title").textContent = `Signed in as ${body.member}`;
  const next = nextPage();
  $("signin-status").textContent = `Unit ${body.unit}. Opening ${next === "/crew" ? "your incidents" : next}…`;
  $("signin-next").href = next;
  $("signin-next").hidden = false;
  location.replace(next);
}

function fail(message) {
  document.body.dataset.signin = "failed";
  $("signin-title").textContent = "This sign-in link did not work";
  $("signin-status").textContent = message;
  $("signin-status").className = "error";
}

signIn();
