import { useState } from 'react';
import { Navigate, useLocation, useNavigate } from 'react-router-dom';
import { useSession } from '../store/session.js';
import { signedOutNotice } from '../store/connection.js';
import AppHeader from '../components/AppHeader.jsx';

const DEMO_LOGINS = [
  ['alice', 'alice-pass'],
  ['bob', 'bob-pass'],
  ['carol', 'carol-pass'],
  ['dave', 'dave-pass'],
];

export default function LoginPage() {
  const status = useSession((s) => s.status);
  const login = useSession((s) => s.login);
  const loginError = useSession((s) => s.loginError);
  const signedOutReason = useSession((s) => s.signedOutReason);
  const navigate = useNavigate();
  const location = useLocation();
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);

  const target = location.state?.from || '/dashboard';
  if (status === 'authenticated') return <Navigate to={target} replace />;
  const notice = signedOutNotice(signedOutReason);

  async function onSubmit(event) {
    event.preventDefault();
    setBusy(true);
    try {
      if (await login(username, password)) navigate(target, { replace: true });
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="app">
      <AppHeader right={notice ? <span className="pill off" data-testid="signed-out">Signed out</span> : null} />
      <main className="content narrow">
        <section className="panel">
          <h1>Sign in</h1>
          <p className="muted">See who’s online right now.</p>
          {notice && (
            <p className="notice" role="status" data-testid="signed-out-notice">
              {notice}
            </p>
          )}
          <form onSubmit={onSubmit} className="form">
            <label>
              Username
              <input name="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required />
            </label>
            <label>
              Password
              <input name="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
            </label>
            {loginError && (
              <p role="alert" className="error">
                {loginError}
              </p>
            )}
            <button type="submit" className="button primary" disabled={busy}>
              {busy ? 'Signing in…' : 'Sign in'}
            </button>
          </form>
          <div className="hint">
            <p>Demo logins (click one to fill the form):</p>
            <ul className="demo-logins">
              {DEMO_LOGINS.map(([user, pass]) => (
                <li key={user}>
                  <button
                    type="button"
                    className="chip"
                    onClick={() => {
                      setUsername(user);
                      setPassword(pass);
                    }}
                  >
                    <code>{user}</code> / <code>{pass}</code>
                  </button>
                </li>
              ))}
            </ul>
          </div>
        </section>
      </main>
    </div>
  );
}
