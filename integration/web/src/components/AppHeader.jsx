import Avatar from './Avatar.jsx';

/** The top bar: product name on the left; the signed-in user and Log out on the right. */
export default function AppHeader({ user, onLogout, right }) {
  return (
    <header className="topbar">
      <div className="brand">
        <span className="brand-mark" aria-hidden="true" />
        <span className="brand-name">Presence</span>
      </div>
      <div className="account">
        {user ? (
          <>
            <Avatar id={user.id} name={user.name} size="sm" />
            <span className="account-name" data-testid="me" title={`Signed in as ${user.name}`}>
              {user.name}
            </span>
            <button type="button" className="button secondary" onClick={onLogout}>
              Log out
            </button>
          </>
        ) : (
          right ?? null
        )}
      </div>
    </header>
  );
}
