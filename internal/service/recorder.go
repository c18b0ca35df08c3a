package service

// Recorder counts what the service does, for monitoring. Counts are exact:
// they come from what each transaction reports it did.
type Recorder interface {
	// MembershipsChanged counts n memberships that appeared (operation
	// "add") or disappeared ("remove"), by history reason.
	MembershipsChanged(operation, reason string, n int64)
	// ReportDownloaded counts a report download of one user or of all,
	// and whether it completed.
	ReportDownloaded(allUsers, ok bool)
}

// NopRecorder counts nothing.
type NopRecorder struct{}

// MembershipsChanged does nothing.
func (NopRecorder) MembershipsChanged(string, string, int64) {}

// ReportDownloaded does nothing.
func (NopRecorder) ReportDownloaded(bool, bool) {}
