// An Express backend written the way the seed describes its backend: express-session with
// connect-redis, Passport's local strategy, the `connect.sid` cookie and `sess:` keys in Redis.
// It knows nothing about the gateway or Socket.IO: the point of running it in the compose stack
// is that the gateway reads the sessions this app writes without the app being changed.
//
// Env: PORT (3000), HOST (0.0.0.0), REDIS_URL (required), REDIS_PASSWORD_FILE (a file holding
// Redis's password, e.g. a compose secret; or the password in REDIS_URL), SESSION_SECRET_FILE
// (comma-separated list of files, one secret each) or SESSION_SECRET (comma-separated list of
// secrets): the first signs, all verify, as express-session does with an array of secrets; one
// of the two is required, there is no default. BASE_PATH (empty: the routes at /api/auth/...;
// "/express": at /express/api/auth/..., so that one gateway origin can serve this app next to
// another one that also uses /api/auth/).
import { readFileSync } from 'node:fs';
import http from 'node:http';
import express from 'express';
import session from 'express-session';
import passport from 'passport';
import { Strategy as LocalStrategy } from 'passport-local';
import { createClient } from 'redis';
import RedisStore from 'connect-redis';

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || '0.0.0.0';
const redisUrl = process.env.REDIS_URL;
const basePath = (process.env.BASE_PATH || '').replace(/\/+$/, '');
const list = (value) => (value || '').split(',').map((s) => s.trim()).filter(Boolean);
/** A secret file's contents without the trailing newline; a missing or empty file is fatal. */
function readSecret(file) {
  const value = readFileSync(file, 'utf8').replace(/[\r\n]+$/, '');
  if (!value) throw new Error(`${file} is empty`);
  return value;
}
const secrets = process.env.SESSION_SECRET_FILE
  ? list(process.env.SESSION_SECRET_FILE).map(readSecret)
  : list(process.env.SESSION_SECRET);
const redisPassword = process.env.REDIS_PASSWORD_FILE ? readSecret(process.env.REDIS_PASSWORD_FILE) : undefined;

if (!redisUrl) throw new Error('REDIS_URL is required: sessions live in Redis so the gateway can read them');
if (secrets.length === 0) throw new Error('SESSION_SECRET_FILE (or SESSION_SECRET) is required: no default secret');

// Reconnects forever with a capped backoff, so the app survives a Redis restart like the
// gateway does; requests that need the store fail while it is away.
const redis = createClient({
  url: redisUrl,
  ...(redisPassword ? { password: redisPassword } : {}),
  socket: { reconnectStrategy: (retries) => Math.min(100 * 2 ** retries, 2000) },
});
redis.on('error', (err) => console.error(`redis: ${err.message}`));
await redis.connect();

// Users, as in the seed: any well-formed name logs in with the password "pw" and the id is the
// name. Passport keeps only the id in the session (`passport.user`), as the seed does; the
// gateway reads that id from Redis.
const USERNAME = /^[A-Za-z0-9_.-]{1,64}$/;
const PASSWORD = process.env.DEMO_PASSWORD || 'pw';

passport.use(new LocalStrategy((username, password, done) => (
  USERNAME.test(username) && password === PASSWORD
    ? done(null, { id: username, name: username })
    : done(null, false))));
passport.serializeUser((user, done) => done(null, user.id));
passport.deserializeUser((id, done) => done(null, { id, name: id }));

const app = express();
app.disable('x-powered-by');
app.use(express.json());
app.use(express.urlencoded({ extended: false }));

// Liveness for the container healthcheck: the process serves requests. Redis is not checked
// here, so a Redis outage does not make the container unhealthy (and restarted); /readyz does.
app.get('/healthz', (_req, res) => res.json({ ok: true }));

// Readiness: Redis answers, so a login can work.
app.get('/readyz', async (_req, res) => {
  try {
    await redis.ping();
    res.json({ ok: true });
  } catch (err) {
    res.status(503).json({ ok: false, error: err.message });
  }
});

// Everything with a session lives under BASE_PATH, as an app mounted under a prefix does; the
// cookie's path stays "/" (express-session's default) so it also reaches /socket.io/ on the same
// origin, where the gateway reads it.
const api = express.Router();
api.use(session({
  name: 'connect.sid',
  secret: secrets,
  store: new RedisStore({ client: redis, prefix: 'sess:' }),
  resave: false,
  saveUninitialized: false,
  cookie: { path: '/', httpOnly: true, maxAge: 24 * 60 * 60 * 1000 },
}));
api.use(passport.initialize());
api.use(passport.session());

api.post('/api/auth/login', passport.authenticate('local'), (req, res) => res.json({ user: req.user }));
api.get('/api/auth/user', (req, res) => (req.user ? res.json({ user: req.user }) : res.status(401).json({ user: null })));
api.post('/api/auth/logout', (req, res, next) => {
  req.logout((err) => {
    if (err) return next(err);
    return req.session.destroy((destroyErr) => (destroyErr ? next(destroyErr) : res.json({ ok: true })));
  });
});

app.use(basePath || '/', api);

const server = http.createServer(app);
server.listen(port, host, () => console.log(`express-service listening on ${host}:${port}${basePath}`));

// Docker sends SIGTERM on stop; close cleanly so `docker compose down` is quick.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => redis.quit().finally(() => process.exit(0)));
    setTimeout(() => process.exit(0), 3000).unref();
  });
}
