import { Navigate, useLocation } from 'react-router-dom';
import { useSession } from '../store/session.js';

/** Renders its children only for a signed-in user; anyone else goes to /login. */
export default function RequireAuth({ children }) {
  const status = useSession((s) => s.status);
  const location = useLocation();
  if (status === 'unknown') return <p className="loading">Checking your session…</p>;
  if (status !== 'authenticated') return <Navigate to="/login" replace state={{ from: location.pathname }} />;
  return children;
}
