"""The operator's live view (`/dashboard`), its pure parts: no broker, no store, no HTTP.

    window.py   windowed aggregates in bounded memory: arrivals, queue depths, SLO attainment, latency
                percentiles, FID and the judge's escalation rate, overall, per tenant and per latency class
    feed.py     the store's event stream folded into the window; the jobs that ended, and the newest listed
    fleet.py    the GPU grid, the plan, its changes with their reasons and switch costs

services/api/dashboard.py reads the store and the broker once a tick around these, for every viewer;
docs/observability-page.md says what each panel means and what it costs."""
