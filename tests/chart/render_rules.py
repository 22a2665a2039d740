"""Renders the chart with a values file and writes its PrometheusRule as a Prometheus rule file:
    render_rules.py VALUES.yaml OUT.yaml
The Prometheus end-to-end test (tests/prometheus_e2e.rs) loads the result into a real server."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chartlib  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    values = chartlib.values_file(Path(sys.argv[1]))
    chartlib.validate_values(values)
    rendered = chartlib.render(values)
    Path(sys.argv[2]).write_text(yaml.safe_dump(chartlib.prometheus_rule_groups(rendered)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
