// Test-only additions, appended by tests/test_ohif.py to deploy/ohif/app-config.js (whose DICOMweb
// root it points at the test server): OHIF's first-visit onboarding tour ("Scrolling Through
// Images", a modal overlay over the viewport) is turned off so the screenshot shows the image.
window.config.customizationService = { 'ohif.tours': { $set: [] } };
