// Package deploytest checks the deployment files: the Kubernetes manifests
// decode strictly into the k8s.io/api types and probe endpoints the service
// really serves; docker-compose.yml loads with the compose-spec loader and
// runs every service the README names. It lives in a module of its own so
// that these heavy test-only dependencies stay out of the service's.
package deploytest
