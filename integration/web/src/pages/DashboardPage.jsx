import { useNavigate } from 'react-router-dom';
import { useSession } from '../store/session.js';

const CONNECTION_LABEL = {
  connecting: 'connecting…',
  online: 'live',
  offline: 'offline',
  refused: 'refused',
};

export default function DashboardPage() {
  const user = useSession((s) => s.user);
  const onlineUsers = useSession((s) => s.onlineUsers);
  const connection = useSession((s) => s.connection);
  const connectionError = useSession((s) => s.connectionError);
  const logout = useSession((s) => s.logout);
  const navigate = useNavigate();

  async function onLogout() {
    await logout();
    navigate('/login', { replace: true });
  }

  return (
    <main className="card">
      <header>
        <h1>Dashboard</h1>
        <p>
          Signed in as <strong data-testid="me">{user?.name}</strong>{' '}
          <span className={`connection ${connection}`} data-testid="connection" data-state={connection}>
            {CONNECTION_LABEL[connection]}
            {connectionError ? `: ${connectionError}` : ''}
          </span>
        </p>
        <button type="button" onClick={onLogout}>Log out</button>
      </header>
      <section>
        <h2>Online now ({onlineUsers.length})</h2>
        <ul data-testid="online-users">
          {onlineUsers.map((u) => (
            <li key={u.id} data-user-id={u.id}>
              {u.name}
              {u.id === user?.id ? ' (you)' : ''}
            </li>
          ))}
        </ul>
      </section>
    </main>
  );
}
