// The suite creates the spec's example segment; delete it first if an
// earlier run left it, so that the suite can run again on one database.
pm.sendRequest({
  url: pm.collectionVariables.get('baseUrl') + '/segments/AVITO_VOICE_MESSAGES',
  method: 'DELETE',
  header: { Authorization: 'Bearer ' + pm.environment.get('token') },
}, (err, res) => {
  if (err || (res.code !== 204 && res.code !== 404)) {
    throw new Error('deleting AVITO_VOICE_MESSAGES: ' + (err || res.code));
  }
});
