import { useState } from 'react';
import { Navigate, useLocation, useNavigate } from 'react-router-dom';
import { useSession } from '../store/session.js';

export default function LoginPage() {
  const status = useSession((s) => s.status);
  const login = useSession((s) => s.login);
  const loginError = useSession((s) => s.loginError);
  const navigate = useNavigate();
  const location = useLocation();
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);

  const target = location.state?.from || '/dashboard';
  if (status === 'authenticated') return <Navigate to={target} replace />;

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
    <main className="card">
      <h1>Sign in</h1>
      <form onSubmit={onSubmit}>
        <label>
          Username
          <input name="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required />
        </label>
        <label>
          Password
          <input name="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
        </label>
        {loginError && <p role="alert" className="error">{loginError}</p>}
        <button type="submit" disabled={busy}>Sign in</button>
      </form>
      <p className="hint">Demo logins: alice / alice-pass, bob / bob-pass, carol / carol-pass, dave / dave-pass</p>
    </main>
  );
}
