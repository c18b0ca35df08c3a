package service

// Recorder counts what the services do, for monitoring. (Membership
// changes are counted by the stores, from what each transaction did.)
type Recorder interface {
	// ReportDownloaded counts a report download of one user or of all,
	// and whether it completed.
	ReportDownloaded(allUsers, ok bool)
}

// NopRecorder counts nothing.
type NopRecorder struct{}

// ReportDownloaded does nothing.
func (NopRecorder) ReportDownloaded(bool, bool) {}
