/** Plain words about a connection that is not live, with a Retry button when it helps. */
export default function ConnectionBanner({ banner, onRetry }) {
  if (banner.live) return null;
  return (
    <div className={`banner ${banner.tone}`} role="status" aria-live="polite" data-testid="connection-banner">
      <span className={`banner-icon ${banner.tone}`} aria-hidden="true" />
      <div className="banner-text">
        <strong>{banner.title}</strong>
        <span>{banner.detail}</span>
      </div>
      {banner.retry && (
        <button type="button" className="button secondary small" onClick={onRetry}>
          Retry
        </button>
      )}
    </div>
  );
}
