import { initials } from '../store/connection.js';

/** A stable hue per user id, so a person keeps their colour across reloads. */
function hue(id = '') {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export default function Avatar({ id, name, size = 'md' }) {
  return (
    <span className={`avatar ${size}`} style={{ '--hue': hue(id) }} aria-hidden="true">
      {initials(name || id)}
    </span>
  );
}
