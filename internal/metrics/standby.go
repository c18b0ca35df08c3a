package metrics

import "github.com/prometheus/client_golang/prometheus"

// standby is what the reads of a PostgreSQL standby report.
type standby struct {
	reads     prometheus.Counter
	fallbacks *prometheus.CounterVec
	lag       prometheus.Gauge
	usable    prometheus.Gauge
}

func (m *Metrics) registerStandby() {
	m.standby = standby{
		reads: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "standby", Name: "reads_total",
			Help: "Reads the PostgreSQL standby answered (DATABASE_REPLICA_URL).",
		}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "standby", Name: "fallbacks_total",
			Help: "Reads that could go to the standby and went to the primary, by why: down, lagging (more than REPLICA_MAX_LAG), behind (not replayed past what this process has seen), writing (a write of this process in flight).",
		}, []string{"reason"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "standby", Name: "replay_lag_bytes",
			Help: "How far the standby's replay is behind the primary, in bytes of WAL; -1 when it does not answer.",
		}),
		usable: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "standby", Name: "usable",
			Help: "1 while the standby answers and is within REPLICA_MAX_LAG.",
		}),
	}
	for _, r := range []string{"down", "lagging", "behind", "writing"} {
		m.standby.fallbacks.WithLabelValues(r)
	}
	m.reg.MustRegister(m.standby.reads, m.standby.fallbacks, m.standby.lag, m.standby.usable)
}

// StandbyRead counts a read the standby answered.
func (m *Metrics) StandbyRead() { m.standby.reads.Inc() }

// StandbyFallback counts a read sent to the primary instead, by reason.
func (m *Metrics) StandbyFallback(reason string) { m.standby.fallbacks.WithLabelValues(reason).Inc() }

// StandbyLag sets the standby's replay lag and whether it is usable.
func (m *Metrics) StandbyLag(bytes int64, usable bool) {
	m.standby.lag.Set(float64(bytes))
	v := 0.0
	if usable {
		v = 1
	}
	m.standby.usable.Set(v)
}
