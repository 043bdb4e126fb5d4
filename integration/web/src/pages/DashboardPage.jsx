import { useNavigate } from 'react-router-dom';
import { useSession } from '../store/session.js';
import { connectionBanner } from '../store/connection.js';
import AppHeader from '../components/AppHeader.jsx';
import Avatar from '../components/Avatar.jsx';
import ConnectionBanner from '../components/ConnectionBanner.jsx';

export default function DashboardPage() {
  const user = useSession((s) => s.user);
  const status = useSession((s) => s.status);
  const onlineUsers = useSession((s) => s.onlineUsers);
  const connection = useSession((s) => s.connection);
  const logout = useSession((s) => s.logout);
  const retryNow = useSession((s) => s.retryNow);
  const navigate = useNavigate();
  const banner = connectionBanner({ status, connection });
  const stale = banner.listStale;

  async function onLogout() {
    await logout();
    navigate('/login', { replace: true });
  }

  return (
    <div className="app">
      <AppHeader user={user} onLogout={onLogout} />
      <main className="content">
        <section className="panel" aria-labelledby="online-title">
          <div className="panel-head">
            <h1 id="online-title">Who’s online</h1>
            <span className={`pill ${banner.tone}`} data-testid="connection" data-state={connection}>
              <span className="pill-dot" aria-hidden="true" />
              {banner.label}
            </span>
          </div>
          <ConnectionBanner banner={banner} onRetry={retryNow} />
          <p className="list-caption">
            {stale
              ? onlineUsers.length > 0
                ? 'Last known list — may be out of date'
                : 'Waiting for the list…'
              : `${onlineUsers.length} ${onlineUsers.length === 1 ? 'person' : 'people'} online now`}
          </p>
          <ul className={`people${stale ? ' stale' : ''}`} data-testid="online-users" data-stale={stale ? 'true' : 'false'} aria-busy={stale}>
            {onlineUsers.map((u) => (
              <li key={u.id} data-user-id={u.id} className="person">
                <span className="person-avatar">
                  <Avatar id={u.id} name={u.name} />
                  <span className={`status-dot${stale ? ' unknown' : ''}`} aria-hidden="true" />
                </span>
                <span className="person-name">{u.name}</span>
                {u.id === user?.id && <span className="you">you</span>}
              </li>
            ))}
          </ul>
        </section>
      </main>
    </div>
  );
}
